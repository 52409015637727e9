"""covidxray.data: sources -> manifest (build_manifest, read_manifest) -> dedup -> split -> cache (load_cache)."""
