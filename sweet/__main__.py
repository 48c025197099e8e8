from sweet.cli import main

main()
