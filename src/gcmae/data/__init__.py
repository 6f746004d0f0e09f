from gcmae.data.datasets import ImageFolderDataset, EmptyDatasetError
from gcmae.data.sampler import SeededEpochSampler
from gcmae.data.transforms import eval_transform, pretrain_transform

__all__ = ["ImageFolderDataset", "EmptyDatasetError", "SeededEpochSampler", "eval_transform", "pretrain_transform"]
