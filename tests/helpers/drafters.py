"""Test drafters for speculative decoding, and a recorder of the Generator's results."""


def oracle_and_liar(ids):
    """Drafters that know the output (drafting exactly what comes next) or always draft a token it never writes."""
    class Oracle:
        def draft(self, context, limit):
            n = len(context)
            return list(ids[n:n + limit]) if list(context) == list(ids[:n]) else []

        def learn(self, _):
            pass

    class Liar(Oracle):
        def draft(self, context, limit):
            wrong = next(t for t in range(1000) if t not in ids)
            return [wrong] * min(limit, 3)

    return Oracle(), Liar()


def record_generations(monkeypatch) -> list:
    """Every Generation the Generator returns from now on, in order."""
    from omniad_edge.generate import Generator

    seen = []
    generate = Generator.generate

    def recording(self, *args, **kwargs):
        out = generate(self, *args, **kwargs)
        seen.extend(out)
        return out

    monkeypatch.setattr(Generator, "generate", recording)
    return seen
