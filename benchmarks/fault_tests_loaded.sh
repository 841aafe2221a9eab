#!/usr/bin/env bash
# The fault-test files, 5 rounds in a row under `pytest -n auto`, while another process keeps a core
# busy (a Python busy loop): the races these tests once had show up on a loaded 2-core machine.
#   bash benchmarks/fault_tests_loaded.sh    (prints pytest's summary and the seconds of each round)
cd "$(dirname "$0")/.." || exit 1
python3 -c "while True: pass" & HOG=$!
trap 'kill $HOG' EXIT
for i in 1 2 3 4 5; do
  start=$(date +%s)
  .venv/bin/python -m pytest -q -n auto -p no:cacheprovider tests/test_elastic.py tests/test_preemption.py tests/test_resume.py tests/test_launchers.py 2>&1 | tail -1
  echo "round $i: $(( $(date +%s) - start )) s"
done
