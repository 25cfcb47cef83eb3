"""Entry point: ``python train.py technique=kd student=4L`` (see conf/train.yaml)."""

from slimnlp.train import main

if __name__ == "__main__":
    main()
