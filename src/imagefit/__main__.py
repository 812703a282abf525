from imagefit.cli import main

main()
