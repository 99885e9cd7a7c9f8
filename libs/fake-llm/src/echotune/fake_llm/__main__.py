from echotune.fake_llm.server import main

main()
