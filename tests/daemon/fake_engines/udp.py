def create(ctx):
    return Broken()


class Broken:
    def handle(self, frame, info):
        raise RuntimeError("engine bug")
