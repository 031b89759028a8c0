from unidg_rt.cli.app import main

main()
