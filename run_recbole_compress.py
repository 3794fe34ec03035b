"""Train and evaluate recbole-compress models and RecBole baselines, as RecBole's run_recbole.py does.

    python run_recbole_compress.py --model=LSAN
    python run_recbole_compress.py --model=SASRec,NextItNet --dataset=ml-100k --epochs=5

See ``python run_recbole_compress.py --help`` and the README.
"""
import sys

from recbole_compress.cli import main

if __name__ == "__main__":
    sys.exit(main())
