<tr class="{{kind}} {{'hidden' if place['is_hidden'] else ''}}">
  <td>{{"↳ " if kind == "district" else ""}}<form method="post" action="/admin/{{kind}}/{{place['id']}}" class="inline">
    % include('admin/_csrf.tpl')
    <input name="name" value="{{place['name']}}" maxlength="64" aria-label="{{kind}} name">
    <button name="action" value="rename" type="submit" class="small">Rename</button>
  </form>{{" (hidden)" if place["is_hidden"] else ""}}</td>
  <td class="actions"><form method="post" action="/admin/{{kind}}/{{place['id']}}" class="inline">
    % include('admin/_csrf.tpl')
    <button name="action" value="up" type="submit" class="small" title="Move up">↑</button>
    <button name="action" value="down" type="submit" class="small" title="Move down">↓</button>
    <button name="action" value="{{'show' if place['is_hidden'] else 'hide'}}" type="submit" class="small">{{"Show" if place["is_hidden"] else "Hide"}}</button>
  </form></td>
</tr>
