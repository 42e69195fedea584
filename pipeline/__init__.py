"""Data side of spix: dataset discovery, decoding, SLIC superpixels, Parquet shards."""
