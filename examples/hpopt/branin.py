"""hpopt's sequential usage loop, unchanged but for its import, against an hpod daemon.

    HPOD_SOCKET=/path/to/hpod.sock python examples/hpopt/branin.py

hpopt's own sample minimizes the Branin function (its three minima are 0.397887) with
bayes_opt, 2 iterations a trial; so does this, with the function written out instead of taken
from scikit-optimize. With `import hpopt` in place of the import below, it is hpopt's loop.
"""

import math

from hpod.compat import hpopt


def branin(a, b):
    # The Branin-Hoo function on [-5, 10] x [0, 15].
    return (
        (b - 5.1 / (4 * math.pi**2) * a**2 + 5 / math.pi * a - 6) ** 2
        + 10 * (1 - 1 / (8 * math.pi)) * math.cos(a)
        + 10
    )


def my_model(a, b):
    return -branin(a, b)


def my_trainer(config):
    for _ in range(config["iterations"]):
        score = my_model(**config["params"])
        if hpopt.report(config=config, score=score) == hpopt.Status.STOP:
            break


hp_configs = {
    "a": hpopt.search_space("uniform", [-5, 10]),
    "b": hpopt.search_space("uniform", [0, 15]),
}

my_hpo = hpopt.create(
    save_path="./tmp/my_hpo_branin",
    search_alg="bayes_opt",
    search_space=hp_configs,
    ealry_stop="median_stop",
    num_init_trials=5,
    num_trials=20,
    max_iterations=2,
    resume=False,
    num_full_iterations=2,
    full_dataset_size=1,
)

while True:
    config = my_hpo.get_next_sample()
    if config is None:
        break
    my_trainer(config)

best_config = my_hpo.get_best_config()
my_hpo.print_results()
print("best hp: ", best_config)
