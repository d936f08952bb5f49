"""Stand-in for OpenAI's `clip` package, so benchmarks/reference_trainer.py can run the published trainer.

Only `clip.load` is provided, the one call the trainer makes. It builds open_clip's ViT-B-32 with random
weights, because no weights can be downloaded here: the embeddings are meaningless, but computing them
costs what the real encoder costs. OpenAI's `clip.load` also runs the model in float32 on the CPU.
"""
import open_clip

_OPEN_CLIP_NAMES = {"ViT-B/32": "ViT-B-32"}


def load(name, device="cpu"):
    """(model, preprocess) like OpenAI's: `model.encode_image(batch)` gives unnormalised [N, 512]
    features, `preprocess(pil_image)` the resized, centre-cropped, normalised [3, 224, 224] tensor."""
    model, _, preprocess = open_clip.create_model_and_transforms(
        _OPEN_CLIP_NAMES[name], pretrained=None, device=device
    )
    return model.eval(), preprocess
