import socket, json, time
errs = {}
t=time.time()
for i in range(3000):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect("/tmp/rb-fork/run/control.sock")
        s.sendall(b'{"id":1,"op":"status"}\n')
        f = s.makefile("rb"); l = f.readline()
        if not l: errs["eof"] = errs.get("eof",0)+1
        s.close()
    except Exception as e:
        errs[repr(e)[:60]] = errs.get(repr(e)[:60],0)+1
print("3000 connections in %.2fs" % (time.time()-t), errs)
