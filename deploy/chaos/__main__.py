from deploy.chaos.run import main

main()
