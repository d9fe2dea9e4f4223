from stackbox.cli.main import main

raise SystemExit(main())
