"""Readers of the on-disk formats the datasets come in: IDX (MNIST), CIFAR's pickled batches,
AEDAT 2.0 event recordings and JPEG images. Each turns files into NumPy arrays and checks them
against its format only; which files make up a dataset, and what its samples must be, is the
dataset module's business (bntt/data/<dataset>.py)."""
