"""PowerSync's JavaScript attachment queue as a baseline: not measured yet."""


def run(record, nginx_factory):
    print("  PowerSync JS attachment queue: not measured (harness not written yet; see results.md)")
