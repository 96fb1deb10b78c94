"""``python -m services.ft``: the FT logger/replayer."""

from services.ft.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
