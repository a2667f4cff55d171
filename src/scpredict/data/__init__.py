"""AnnData ↔ arrays: gene alignment, loaders (in-memory, backed, chunked, parquet)."""

from ._alignment import GeneAlignment, align_genes, align_matrix
from ._backed import CellLoader, CellSource, open_cells, read_lazy, source_of, write_parquet_cells
from ._chunks import ChunkBatch, ChunkedDataset, write_chunks
from ._datamodule import CellDataModule, distributed_inference
from ._tahoe import TAHOE_OBS_COLUMNS, read_tahoe, read_tahoe_gene_metadata

__all__ = [
    "GeneAlignment",
    "align_genes",
    "align_matrix",
    "TAHOE_OBS_COLUMNS",
    "read_tahoe",
    "read_tahoe_gene_metadata",
    "ChunkBatch",
    "ChunkedDataset",
    "write_chunks",
    "CellDataModule",
    "CellLoader",
    "CellSource",
    "distributed_inference",
    "open_cells",
    "read_lazy",
    "source_of",
    "write_parquet_cells",
]
