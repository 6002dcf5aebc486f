from astroclass.cli import main

main()
