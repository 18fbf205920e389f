class ArpEngine:
    def __init__(self, ctx):
        self.ctx = ctx
        self.seen = []
        self.ticks = 0

    def handle(self, frame, info):
        self.seen.append(bytes(frame))
        self.ctx.to_guest(b"reply:" + bytes(frame[:8]))

    def tick(self, now):
        self.ticks += 1
