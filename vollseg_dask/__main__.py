"""``python -m vollseg_dask`` runs the ``vollseg-dask`` command line."""

from vollseg_dask.cli import run

if __name__ == "__main__":
    run()
