% url = f"/admin/{kind}/{place['id']}"
% if editing:
% values = get("values") or {"name": place["name"], "position": pos, "hidden": place["is_hidden"]}
<form class="place-row editing" id="{{key}}-row" method="post" action="{{url}}" hx-post="{{url}}" hx-target="this" hx-swap="outerHTML" aria-label="Change {{place['name']}}">
  % include('admin/_csrf.tpl')
  <input type="hidden" name="action" value="save">
  % if get("error"):
  <p class="flash bad" role="alert">⚠️ {{error}}</p>
  % end
  <label class="grow">{{"City" if kind == "city" else "District"}} name <input name="name" required maxlength="64" value="{{values['name']}}" autofocus></label>
  <label>Position <select name="position">
    % for n in range(1, count + 1):
    <option value="{{n}}" {{'selected' if n == values['position'] else ''}}>{{n}}{{" (first)" if n == 1 and count > 1 else " (last)" if n == count and count > 1 else ""}}</option>
    % end
  </select></label>
  <label class="check"><input type="checkbox" name="hidden" value="1" {{'checked' if values['hidden'] else ''}}> Hidden from shoppers</label>
  <span class="form-actions"><button type="submit">Save</button>
    <a class="button secondary cancel" href="/admin/catalog#{{key}}" hx-get="{{url}}/row" hx-target="closest .place-row" hx-swap="outerHTML">Cancel</a></span>
</form>
% else:
<div class="place-row{{' hidden' if place['is_hidden'] else ''}}" id="{{key}}-row" data-edit-row>
  <button type="button" class="handle" data-handle data-name="{{place['name']}}" aria-label="Move {{place['name']}}, {{pos}} of {{count}}" aria-describedby="reorder-help"><span aria-hidden="true">⠿</span></button>
  <span class="place-what"><span class="place-name">{{place["name"]}}</span>
    % if place["is_hidden"]:
    <span class="tag">hidden</span>
    % end
    <span class="place-meta">{{meta}}</span></span>
  <a class="button small secondary edit" href="/admin/catalog?edit={{key}}#{{key}}" hx-get="{{url}}/edit" hx-target="closest .place-row" hx-swap="outerHTML"{{!' autofocus' if get('focus') else ''}}>Edit<span class="visually-hidden"> {{place["name"]}}</span></a>
</div>
% end
