"""`python -m sentiment_dist` (`sentiment-dist`): the main job.

With no arguments it runs offline on the embedded synthetic domains: trains
a BiLSTM on movie reviews, reports its test metrics, then fine-tunes it on
product reviews (gradual unfreezing) and reports again. It is the
`finetune` entry point with its defaults, so every override works here too.
"""

from sentiment_dist.finetune import main

if __name__ == "__main__":
    main()
