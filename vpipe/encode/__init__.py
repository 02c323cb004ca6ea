"""Classic encodings on the feature cache: a FAISS k-means codebook with diagonal-GMM
statistics, BoF / VLAD / Fisher vectors of every video, and a linear baseline.

The stage that runs them over a dataset is :func:`vpipe.stages.encode.run_encode`; these
are its parts, for notebooks and for heads that start from the codebook.

The names load on first use (:mod:`vpipe.lazy`): the stage chain reads the memory
budget's constants without importing scikit-learn and FAISS.
"""

from vpipe.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "run_baseline": "vpipe.encode.baseline",
        "METHODS": "vpipe.encode.classic",
        "encode_bof": "vpipe.encode.classic",
        "encode_fisher": "vpipe.encode.classic",
        "encode_vlad": "vpipe.encode.classic",
        "encoding_dim": "vpipe.encode.classic",
        "Codebook": "vpipe.encode.codebook_io",
        "load_codebook": "vpipe.encode.codebook_io",
        "save_codebook": "vpipe.encode.codebook_io",
        "EncodingReader": "vpipe.encode.encoding_io",
        "Encodings": "vpipe.encode.encoding_io",
        "load_encodings": "vpipe.encode.encoding_io",
        "fit_codebook": "vpipe.encode.fit",
        "sample_descriptors": "vpipe.encode.fit",
        "fit_kmeans": "vpipe.encode.kmeans",
        "Pca": "vpipe.encode.pca",
        "fit_pca": "vpipe.encode.pca",
    },
)
