class EncodedVideo:
    """Imported, never used, by the published trainer."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("pytorchvideo stand-in: EncodedVideo is not available")
