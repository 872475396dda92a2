"""The HDF5 activation store: write hookpoint activations while sampling, resume, stream shuffled batches.

Layout of one store file (h5py, libver='latest', written in SWMR mode so readers can follow a run):

    attrs: format='saeuron-activations', format_version, config (JSON of CacheConfig)
    prompts/text, prompts/<kind>     the labelled prompt set: text and one label column per kind ('' when none);
                                     attrs kinds (JSON list); format 1 stores have the kinds style and object
    acts/<hookpoint>                 float16 (rows, width), chunked: one row per token vector
    rows/<hookpoint>/{prompt,seed,step,timestep,branch,position}   provenance of every row
    progress                         int64 (units done, hookpoints): cumulative rows after each unit

A unit is one batch of (prompt, seed) pairs. Its rows are flushed before its `progress` row is
written, so rows past the last `progress` row belong to an unfinished unit: readers ignore them
and `--resume` drops them. A run split over processes (RANK / WORLD_SIZE) writes a folder of
shards with a `manifest.json`; readers follow the manifest.

Modules: `store` (format, config, opening), `reader` (rows, batches), `writer` (appends, commits,
recovery), `run` (`cache_activations` and the `saeuron cache` command).
"""

from .reader import count_rows, iter_batches, prompts_with_rows, read_rows, row_provenance
from .run import cache_activations, register_cli
from .store import FORMAT, FORMAT_VERSION, MANIFEST, PROVENANCE, CacheConfig, StoreInfo, check_config, open_store, parse_positions, parse_timesteps, prompt_table
from .writer import COMMIT_MB

__all__ = ["COMMIT_MB", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PROVENANCE", "CacheConfig", "StoreInfo", "cache_activations", "check_config", "count_rows",
           "iter_batches", "open_store", "parse_positions", "parse_timesteps", "prompt_table", "prompts_with_rows", "read_rows",
           "register_cli", "row_provenance"]
