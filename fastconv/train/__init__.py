"""The reference CNN trainer: ``fastconv train`` / ``python -m fastconv.train``.

    cli.py         command line (``fastconv train --help``)
    loop.py        TrainConfig -> train() -> TrainResult: the epoch loop, LR schedule, max-time, DDP
    checkpoint.py  what a checkpoint holds; saving a run, resuming one (inside an epoch too)
    models.py      ReferenceCNN (fastconv or torch.nn layers, one state_dict layout)
    data.py        digits, MNIST idx, CIFAR-10 pickle batches, synthetic
    distributed.py torchrun ranks, sums over ranks
"""
