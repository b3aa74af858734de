from watcher.launch import run

run()
