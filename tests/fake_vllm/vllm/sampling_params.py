class SamplingParams:
    """Keeps its keyword arguments, as the real one's fields."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


class StructuredOutputsParams:
    def __init__(self, json=None):
        self.json = json
