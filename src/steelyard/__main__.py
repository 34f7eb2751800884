from steelyard.cli import main

raise SystemExit(main())
