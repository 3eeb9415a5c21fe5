from ftvar.cli import main

main()
