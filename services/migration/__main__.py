"""``python -m services.migration``: the migration coordinator."""

from services.migration.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
