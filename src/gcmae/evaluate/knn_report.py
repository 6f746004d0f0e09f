"""kNN evaluation of a trained model on labelled folders (used by the demo and the pretrain summary)."""
from __future__ import annotations

from dataclasses import dataclass

from gcmae.evaluate.common import check_same_classes, same_images
from gcmae.evaluate.embed import extract_features
from gcmae.evaluate.features import open_folder
from gcmae.evaluate.knn import knn_accuracy
from gcmae.models.gcmae import GCMAE


@dataclass
class KNNResult:
    task: str
    pool: str
    k: int
    accuracy: float
    accuracy_1nn: float
    num_reference: int
    num_query: int


def knn_on_folders(
    model: GCMAE, reference_dir: str, query_dir: str | None, img_size: int, mean: tuple, std: tuple, task: str,
    pool: str = "cls", k: int = 200, temperature: float = 0.07, batch_size: int = 128,
) -> KNNResult:
    """Weighted kNN + 1-NN accuracy. Without `query_dir`, leave-one-out on the reference folder."""
    if query_dir is not None and same_images(reference_dir, query_dir):
        query_dir = None  # the same images: leave-one-out, never an image matched to itself
    ref = open_folder(reference_dir, img_size, mean, std)
    ref_f, ref_y = extract_features(model, ref, pool, batch_size)
    if query_dir is None:
        q_f, q_y, loo, n_query = ref_f, ref_y, True, len(ref)
    else:
        query = open_folder(query_dir, img_size, mean, std)
        check_same_classes(ref.classes, ref.root, query.classes, query.root)
        (q_f, q_y), loo, n_query = extract_features(model, query, pool, batch_size), False, len(query)
    n = len(ref.classes)
    k_eff = min(k, len(ref) - int(loo))
    return KNNResult(
        task, pool, k_eff,
        knn_accuracy(ref_f, ref_y, q_f, q_y, n, k_eff, temperature, exclude_self=loo),
        knn_accuracy(ref_f, ref_y, q_f, q_y, n, 1, temperature, exclude_self=loo),
        len(ref), n_query,
    )
