#!/usr/bin/env python3
"""gen_completions.py -- the shell completions from flashify's option table.

    gen_completions.py FLASHIFY TEMPLATE_DIR OUT_DIR

Runs `FLASHIFY --list-options` (the table of src/cli_opts.c, hidden rows
marked) and fills the data block (@FLASHIFY_COMPLETION_DATA@) of the
templates completions/flashify.bash.in and completions/_flashify.in,
writing OUT_DIR/flashify (bash) and OUT_DIR/_flashify (zsh).  The build
runs it, so a row added to the table is completed without editing the
completions.  A value is completed from its name in the table: DIR a
directory, FILE a file, SIZE a size with its units; any other value gets
no completion.
"""

import os
import subprocess
import sys

VALUE_KIND = {"DIR": "dir", "FILE": "file", "SIZE": "size"}


def read_table(flashify):
    out = subprocess.run([flashify, "--list-options"], check=True, capture_output=True,
                         text=True).stdout
    commands, options = [], []
    for line in out.splitlines():
        f = line.split("\t")
        if f[0] == "command":
            commands.append((f[1], f[2]))
        elif f[0] == "option" and f[5] == "shown":
            options.append({"name": f[1], "alias": None if f[2] == "-" else f[2],
                            "metavar": None if f[3] == "-" else f[3],
                            "commands": f[4].split(","), "help": f[6]})
    if not commands or not options:
        sys.exit("gen_completions: %s --list-options printed no table" % flashify)
    return commands, options


def bash_data(commands, options):
    lines = ['_flashify_commands="%s"' % " ".join(c for c, kind in commands if kind == "word")]
    for cmd, _ in commands:
        names = []
        for o in options:
            if cmd in o["commands"]:
                names += ([o["alias"]] if o["alias"] else []) + [o["name"]]
        lines.append('_flashify_opts_%s="%s"' % (cmd, " ".join(names)))
    lines.append("# What the value of an option is: dir, file, size, other; none: takes no value.")
    lines.append("_flashify_value_kind()\n{\n    case $1 in")
    for o in options:
        if o["metavar"]:
            pat = "|".join(([o["alias"]] if o["alias"] else []) + [o["name"]])
            lines.append("    %s) echo %s ;;" % (pat, VALUE_KIND.get(o["metavar"], "other")))
    lines.append("    *) echo none ;;\n    esac\n}")
    return "\n".join(lines)


def zsh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def zsh_spec(o):
    """An _arguments spec: names, [description], and :message:action."""
    desc = o["help"].replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]").replace(":", "\\:")
    value = ""
    if o["metavar"]:
        action = {"dir": "_files -/", "file": "_files", "size": "_flashify_size"}.get(
            VALUE_KIND.get(o["metavar"], ""), " ")
        value = ":%s:%s" % (o["metavar"].lower(), action)
    eq = "=" if o["metavar"] else ""
    if o["alias"]:
        excl = "(%s %s)" % (o["alias"], o["name"])
        return [zsh_quote(excl + o["alias"] + "[" + desc + "]" + value),
                zsh_quote(excl + o["name"] + eq + "[" + desc + "]" + value)]
    return [zsh_quote(o["name"] + eq + "[" + desc + "]" + value)]


def zsh_data(commands, options):
    lines = ["_flashify_commands=(%s)" % " ".join(c for c, kind in commands if kind == "word")]
    for cmd, _ in commands:
        specs = [s for o in options if cmd in o["commands"] for s in zsh_spec(o)]
        lines.append("_flashify_opts_%s=(\n  %s\n)" % (cmd, "\n  ".join(specs)))
    return "\n".join(lines)


def fill(template_path, data, out_path):
    with open(template_path) as f:
        text = f.read()
    if text.count("@FLASHIFY_COMPLETION_DATA@") != 1:
        sys.exit("gen_completions: %s has no (single) @FLASHIFY_COMPLETION_DATA@" % template_path)
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text.replace("@FLASHIFY_COMPLETION_DATA@", data))
    os.replace(tmp, out_path)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    flashify, templates, out = sys.argv[1:]
    commands, options = read_table(flashify)
    os.makedirs(out, exist_ok=True)
    fill(os.path.join(templates, "flashify.bash.in"), bash_data(commands, options),
         os.path.join(out, "flashify"))
    fill(os.path.join(templates, "_flashify.in"), zsh_data(commands, options),
         os.path.join(out, "_flashify"))


if __name__ == "__main__":
    main()
