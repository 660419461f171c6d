"""BentoML's entry point (`bentoml serve service.app:TinyServe`, bentofile.yaml): the one module whose
import starts the server up. Settings are read, every model file is checked against its card, the
provider is decided (CUDA proven by a probe) and the worker shape fits the cores, before any worker
starts: a bad start is one line and exit 2, not a restart loop. Everything else imports without effects.
"""

from __future__ import annotations

from service.runtime import start_up
from service.server import create_service

TinyServe = create_service(start_up())
