"""vertebra."""


def __getattr__(name):  # lazy: keep `import vertebra` free of torch
    if name in ("sequence_loss", "sequence_scores", "view_weights", "SequenceDP"):
        from vertebra import sequence

        return getattr(sequence, name)
    if name == "create_model":
        from vertebra import models

        return models.create_model
    raise AttributeError(f"module 'vertebra' has no attribute {name!r}")
