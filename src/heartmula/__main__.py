from heartmula.cli import main

raise SystemExit(main())
