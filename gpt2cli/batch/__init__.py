"""`gpt2cli batch`: a resumable job over input files, run locally or on Ray Data.

`rows` reads inputs into rows (id, text, per-row parameters or error), `tasks` runs generate,
embed or score over rows on a Session (per-row errors, per-row seeds), `shards` writes the output
directory (shards renamed into place, the manifest, `_SUCCESS`) and reads it back for --resume,
`job` runs a job on the local engine and `ray_engine` on Ray Data. A front end layer: it uses the
session layer, never the commands.
"""
