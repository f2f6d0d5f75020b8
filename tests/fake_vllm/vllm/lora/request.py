class LoRARequest:
    def __init__(self, name, id, path):
        self.name, self.id, self.path = name, id, path
