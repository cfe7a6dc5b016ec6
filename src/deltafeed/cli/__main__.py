from deltafeed.cli import main

raise SystemExit(main())
