// A command line split as a POSIX shell would (Python's shlex.split): whitespace separates
// words; '...' keeps everything literally; "..." keeps everything but lets \ escape
// " \ $ ` and newline; a bare \ escapes the next character. No expansion of any kind:
// the node runs argv as given (exec never goes through a shell).

export class SplitError extends Error {}

/** split("echo 'a b' c\\ d") -> ["echo", "a b", "c d"]; throws SplitError on an
 *  unterminated quote or a trailing backslash. */
export function split(line) {
  const words = [];
  let word = "";
  let inWord = false;
  let i = 0;
  const s = String(line);
  while (i < s.length) {
    const c = s[i];
    if (c === " " || c === "\t" || c === "\n" || c === "\r") {
      if (inWord) { words.push(word); word = ""; inWord = false; }
      i += 1;
    } else if (c === "'") {
      const end = s.indexOf("'", i + 1);
      if (end < 0) throw new SplitError("no closing quotation (')");
      word += s.slice(i + 1, end);
      inWord = true;
      i = end + 1;
    } else if (c === '"') {
      i += 1;
      inWord = true;
      for (;;) {
        if (i >= s.length) throw new SplitError('no closing quotation (")');
        const d = s[i];
        if (d === '"') { i += 1; break; }
        if (d === "\\" && i + 1 < s.length && '"\\$`\n'.includes(s[i + 1])) {
          if (s[i + 1] !== "\n") word += s[i + 1];
          i += 2;
        } else {
          word += d;
          i += 1;
        }
      }
    } else if (c === "\\") {
      if (i + 1 >= s.length) throw new SplitError("no escaped character after \\");
      if (s[i + 1] !== "\n") { word += s[i + 1]; inWord = true; }
      i += 2;
    } else {
      word += c;
      inWord = true;
      i += 1;
    }
  }
  if (inWord) words.push(word);
  return words;
}
