from llm_jax.cli import main

raise SystemExit(main())
