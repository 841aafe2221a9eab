"""Model builders: LSTM classifiers (`classifier`) and the language models that pretrain their
embedding and encoder (`language_model`)."""
