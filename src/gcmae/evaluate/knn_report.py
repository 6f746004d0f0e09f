"""kNN evaluation of an encoder on labelled folders (used by the demo)."""
from __future__ import annotations

from dataclasses import dataclass

from timm.models.vision_transformer import VisionTransformer

from gcmae.data.folders import check_same_classes, open_folder, same_images
from gcmae.encoders.embed import extract_features
from gcmae.scoring.knn import knn_methods, vote_accuracy


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
    model: VisionTransformer, reference_dir: str, query_dir: str | None, img_size: int, mean: tuple, std: tuple, task: str,
    pool: str = "cls", k: int = 200, temperature: float = 0.07, batch_size: int = 128,
) -> KNNResult:
    """Weighted kNN + 1-NN accuracy of an encoder (a timm ViT). Without `query_dir`, leave-one-out on the reference folder."""
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
    methods = knn_methods(ref_f, ref_y, q_f, len(ref.classes), (k,), temperature, exclude_self=loo)
    (k_eff, votes), (_, votes_1nn) = methods.get(f"knn_k{k}", methods["nn1"]), methods["nn1"]
    return KNNResult(task, pool, k_eff, vote_accuracy(votes, q_y), vote_accuracy(votes_1nn, q_y), len(ref), n_query)
