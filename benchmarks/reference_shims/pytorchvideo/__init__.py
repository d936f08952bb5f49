"""Stand-in for `pytorchvideo`, for benchmarks/reference_trainer.py: the published trainer imports
`pytorchvideo.data.encoded_video.EncodedVideo` but never uses it."""
