"""The reference CNN trainer: ``fastconv train`` / ``python -m fastconv.train``.

    cli.py     command line (``fastconv train --help``)
    loop.py    TrainConfig -> train() -> TrainResult: the epoch loop, resume, max-time, DDP
    models.py  ReferenceCNN (fastconv or torch.nn layers, one state_dict layout)
    data.py    digits, MNIST idx, CIFAR-10 pickle batches, synthetic
    checkpoint.py, distributed.py
"""
