"""Classic encodings on the feature cache: a FAISS k-means codebook with diagonal-GMM
statistics, BoF / VLAD / Fisher vectors of every video, and a linear baseline.

The stage that runs them over a dataset is :func:`vpipe.stages.encode.run_encode`; these
are its parts, for notebooks and for heads that start from the codebook.
"""

from vpipe.encode.baseline import run_baseline
from vpipe.encode.classic import METHODS, encode_bof, encode_fisher, encode_vlad, encoding_dim
from vpipe.encode.codebook_io import Codebook, load_codebook, save_codebook
from vpipe.encode.encoding_io import EncodingReader, Encodings, load_encodings
from vpipe.encode.fit import fit_codebook, sample_descriptors
from vpipe.encode.kmeans import fit_kmeans
from vpipe.encode.pca import Pca, fit_pca

__all__ = [
    "METHODS",
    "Codebook",
    "EncodingReader",
    "Encodings",
    "Pca",
    "encode_bof",
    "encode_fisher",
    "encode_vlad",
    "encoding_dim",
    "fit_codebook",
    "fit_kmeans",
    "fit_pca",
    "load_codebook",
    "load_encodings",
    "run_baseline",
    "sample_descriptors",
    "save_codebook",
]

