"""Text data: the corpus files (corpus.py) and the pipeline from documents to token windows and
batches (pipeline.py)."""
