from retentiond.cli.main import main

main()
