"""Small hand-written conversations for the stage tests."""
from proxy.dialects import openai as oa


def call(i, cmd):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "bash", "arguments": '{"command": "%s"}' % cmd}}]}


def result(i, text):
    return {"role": "tool", "tool_call_id": f"c{i}", "content": text}


def agent_conversation(outputs, task="Fix parse_value in src/pkg/values.py", final_user=None):
    msgs = [{"role": "system", "content": "You are an agent."}, {"role": "user", "content": task}]
    for i, (cmd, out) in enumerate(outputs):
        msgs += [call(i, cmd), result(i, out)]
    if final_user:
        msgs.append({"role": "user", "content": final_user})
    return {"model": "m", "messages": msgs}


def conversation(body):
    return oa.to_conversation(body)
