"""``python -m rdt_core.data export --entities N --relations M --seed S ... --out DIR``."""

from rdt_core.data.export import main

raise SystemExit(main())
